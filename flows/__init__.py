"""The Prefect flows (`nightly-retrain`, `train-adapter`, ...) and the entrypoints prefect.yaml deploys."""
