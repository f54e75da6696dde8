"""One module per run kind (evaluate, precision, train): ``build(run_dir, options) -> Section``."""
