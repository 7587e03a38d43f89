from statekeeper_server.app.main import main

raise SystemExit(main())
