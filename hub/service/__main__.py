from atelier.hub.service.base.server import main

if __name__ == "__main__":
    raise SystemExit(main())
