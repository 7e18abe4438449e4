"""`python -m ncf_model train|evaluate|recommend ...` (see ncf_model.cli)."""

from ncf_model.cli import main

raise SystemExit(main())
