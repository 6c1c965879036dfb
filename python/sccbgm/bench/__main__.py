from sccbgm.bench import main

raise SystemExit(main())
