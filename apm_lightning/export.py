"""``apm export CKPT OUT``: a checkpoint becomes a Hugging Face folder (safetensors, config,
tokenizer, and a model card ``README.md``) that ``AutoModelForSequenceClassification``
``.from_pretrained(OUT)`` loads; ``--push-to-hub REPO`` then uploads it."""

from __future__ import annotations

import argparse
from pathlib import Path

from apm_lightning.core import hub
from apm_lightning.core.errors import APMError
from apm_lightning.modules.hf_export import check_export_target, export_module, load_module_from_checkpoint
from apm_lightning.reports.model_card import model_card


def push_to_hub(folder: Path, repo: str, private: bool = False) -> str:
    """Upload an exported folder to the hub repository ``repo`` (created if missing); its URL.
    Offline, or without a token, one line says so and how to push the folder later."""
    later = f"the export is in {folder}; push it later with: hf upload {repo} {folder}"
    if hub.hub_offline_requested() or not hub.hub_reachable():
        raise hub.hub_unreachable_error(f"cannot push to {repo}", later)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="apm export")
    except LocalTokenNotFoundError:
        raise APMError(
            f"cannot push to {repo}: no Hugging Face token (run hf auth login or set HF_TOKEN); {later}"
        ) from None
    except HfHubHTTPError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise APMError(f"cannot push to {repo}: {first}; {later}") from None
    return str(getattr(info, "commit_url", None) or f"{hub.hub_endpoint()}/{repo}")


def _true_or_false(value: str) -> bool:
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def export_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="apm export", description=__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by apm fit")
    parser.add_argument("out", help="output folder (must be new or empty unless --overwrite)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a folder that an earlier apm export wrote"
    )
    # The spelling of fit/validate/predict (--allow_unsafe_checkpoints true), which the error
    # hints name; the dashed flag of earlier versions still works.
    parser.add_argument(
        "--allow_unsafe_checkpoints",
        "--allow-unsafe-checkpoints",
        nargs="?",
        const=True,
        default=False,
        type=_true_or_false,
        metavar="true|false",
        help="unpickle arbitrary objects (only for checkpoints you trust)",
    )
    parser.add_argument(
        "--push-to-hub", "--push_to_hub", metavar="REPO", help="upload the folder to this hub repository"
    )
    parser.add_argument(
        "--private", action="store_true", help="with --push-to-hub: create the repository private"
    )
    args = parser.parse_args(argv)
    if args.push_to_hub and "/" not in args.push_to_hub:
        raise APMError(f"--push-to-hub takes a repository id such as user/name, not {args.push_to_hub!r}")
    check_export_target(args.out, args.overwrite, source=args.checkpoint)  # before loading
    module = load_module_from_checkpoint(args.checkpoint, args.allow_unsafe_checkpoints)
    card = model_card(module, Path(args.checkpoint))
    path = export_module(module, args.out, args.overwrite, extra_files={"README.md": card})
    print(path.resolve())
    if args.push_to_hub:
        print(push_to_hub(path, args.push_to_hub, args.private))
