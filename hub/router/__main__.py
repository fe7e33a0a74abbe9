from atelier.hub.router.server import main

if __name__ == "__main__":
    raise SystemExit(main())
