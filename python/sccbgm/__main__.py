from sccbgm.cli import main

raise SystemExit(main())
