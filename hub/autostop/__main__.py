from atelier.hub.autostop.stopper.stopper import main

if __name__ == "__main__":
    raise SystemExit(main())
