"""The commands' work below the click layer, one module per job; nothing here imports `mmvae_cli.cli`.

    request = FitPriorRequest(run=..., kind=..., ...)   # what the user asked for (flags by field name)
    job = prepare_fit_prior(request)                   # every input checked; nothing written
    result = job.run()                                 # writes the bundle; the summary the CLI prints

train.py: `mmvae train` (TrainRequest, prepare_training, TrainingJob).
fit_prior.py: `mmvae fit-prior --kind KIND` and `mmvae fit-ebm` (kind ebm), one job for every fitted kind.
"""
