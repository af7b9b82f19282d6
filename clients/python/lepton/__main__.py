from lepton.cli import main

raise SystemExit(main())
