"""One module per torch DAG task, each with `run(cfg, paths, device, ...)`:

    train      ncf_model.stages.train       fit on train/, epoch chosen on validation/
    evaluate   ncf_model.stages.evaluate    test metrics, registry version, champion gate
    recommend  ncf_model.stages.recommend   the champion's top-k per user -> topk/
    baselines  ncf_model.stages.baselines   popularity, MF and ALS scored like NCF

`ncf_model.cli` parses the command line and dispatches here.
"""
