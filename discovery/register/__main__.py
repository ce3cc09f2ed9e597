from discovery.register.main import main

raise SystemExit(main())
