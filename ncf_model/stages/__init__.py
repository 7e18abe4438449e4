"""One module per torch DAG task, each with `run(cfg, paths, device, ...)`:

    train       ncf_model.stages.train       the flagship NCF on train/, epochs on validation/
    candidates  ncf_model.stages.candidates  every family under one protocol; the winner on
                                             validation refitted on all positives -> served/
    evaluate    ncf_model.stages.evaluate    registry version, champion gate (validation)
    recommend   ncf_model.stages.recommend   the champion's top-k per user -> topk/

`ncf_model.cli` parses the command line and dispatches here.
"""
