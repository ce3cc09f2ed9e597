from discovery.watch.main import main

raise SystemExit(main())
