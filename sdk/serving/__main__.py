from atelier.serving import main

main()
