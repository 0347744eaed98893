"""A task that fails: the run ends as `failure` and the traceback is in its logs."""


def load_model(path: str) -> None:
    raise FileNotFoundError(f"model file {path!r} is not in the orchestration")


print("loading the model…")
load_model("model.onnx")
