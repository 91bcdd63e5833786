from flowsense.cli import main

raise SystemExit(main())
