from emu.cli.app import main

raise SystemExit(main())
