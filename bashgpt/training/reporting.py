"""Where a run reports to: the experiment trackers Trainer integrates (``--report-to``) and the Hugging Face Hub
(``--push-to-hub``). Everything that could fail (a missing package, no login, no network, the Hub offline) is
checked before any training and said in one line.
"""

import importlib.util
import os
from pathlib import Path
from urllib.parse import urlparse

from ..errors import UserError
from ..network import reachable

# --report-to name -> the package Trainer's integration imports. "auto" (the default) is TensorBoard where it is
# installed, else nothing; "none" is nothing.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}
REPORT_TO_CHOICES = ("auto", "none", *TRACKERS)
HUB_STRATEGIES = ("end", "every_best")  # push best/ once at the end, or also at every new best


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def trackers(report_to: list[str]) -> list[str]:
    """The ``report_to`` list for TrainingArguments; refuses unknown names, a missing package or, for a tracker that
    needs a server, no way to reach it."""
    unknown = [name for name in report_to if name not in REPORT_TO_CHOICES]
    if unknown:
        raise UserError(f"--report-to {unknown[0]} is not a tracker bashgpt knows; choose from "
                        f"{', '.join(REPORT_TO_CHOICES)}")
    if "none" in report_to or not report_to:
        return []
    if report_to == ["auto"]:
        return ["tensorboard"] if installed("tensorboard") else []
    chosen = [name for name in report_to if name != "auto"]
    for name in chosen:
        if not installed(TRACKERS[name]):
            raise UserError(f"--report-to {name} needs the {TRACKERS[name]} package: pip install {TRACKERS[name]} "
                            f"(or drop --report-to {name})")
    if "wandb" in chosen and os.environ.get("WANDB_MODE", "online") not in ("offline", "disabled", "dryrun"):
        host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
        if not reachable(host):
            raise UserError(f"--report-to wandb: cannot reach {host}; set WANDB_MODE=offline to log locally "
                            f"(then `wandb sync`), or drop --report-to wandb")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    server = urlparse(uri) if uri.startswith(("http://", "https://")) else None
    if "mlflow" in chosen and server and not reachable(server.hostname, server.port):
        raise UserError(f"--report-to mlflow: cannot reach MLFLOW_TRACKING_URI={uri}; unset it to log to ./mlruns")
    return chosen


def check_hub(repo_id: str) -> None:
    """Before any training: the Hub must be online, reachable and logged in for ``--push-to-hub``."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise UserError(f"--push-to-hub {repo_id}: the Hugging Face Hub is offline here (HF_HUB_OFFLINE=1); drop "
                        f"--push-to-hub, or run where the Hub is reachable")
    if get_token() is None:
        raise UserError(f"--push-to-hub {repo_id}: not logged in to the Hugging Face Hub; run `hf auth login` or set "
                        f"HF_TOKEN")
    host = urlparse(constants.ENDPOINT).hostname
    if not reachable(host):
        raise UserError(f"--push-to-hub {repo_id}: cannot reach {host}; check the network, or drop --push-to-hub")


class HubPusher:
    """Uploads ``best/`` (weights, tokenizer, card) to a Hub model repository, as Trainer's push_to_hub does:
    in the background at each new best (``every_best``), and once more, waited for, at the end."""

    def __init__(self, repo_id: str, private: bool, strategy: str):
        from huggingface_hub import HfApi

        self.api, self.repo_id, self.private, self.strategy = HfApi(), repo_id, private, strategy
        self.pending = []
        self.created = False

    def push(self, folder: Path, message: str, wait: bool):
        if not self.created:
            self.api.create_repo(self.repo_id, private=self.private, exist_ok=True, repo_type="model")
            self.created = True
        future = self.api.upload_folder(repo_id=self.repo_id, folder_path=str(folder), commit_message=message,
                                        run_as_future=not wait)
        if not wait:
            self.pending.append(future)

    def on_new_best(self, folder: Path, step: int) -> None:
        if self.strategy == "every_best":
            self.push(folder, f"bashgpt: new best at step {step}", wait=False)

    def finish(self, folder: Path, step: int) -> str:
        """The last push, after the earlier ones; returns the repository's address."""
        for future in self.pending:
            future.result()
        self.push(folder, f"bashgpt: best model, training ended at step {step}", wait=True)
        return f"{self.api.endpoint}/{self.repo_id}"
