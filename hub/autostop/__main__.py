from atelier.hub.autostop.stopper import main

if __name__ == "__main__":
    raise SystemExit(main())
