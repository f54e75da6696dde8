from clipcompare.cli import main

raise SystemExit(main())
