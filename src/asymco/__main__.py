from asymco.cli import main

raise SystemExit(main())
