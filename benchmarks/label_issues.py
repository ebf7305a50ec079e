"""Finding wrong labels: asymco's one ACT run against cleanlab's K-fold recipe, side by side.

On the same noisy CIFAR-100 subset (a) with the CIFAR-100N human labels and (b) with the
synthetic noise of a Table-1 preset, each tool scores every training label:

- asymco: one ACT run (`asymco.train`); its label_issues.csv gives `label_score` and
  `is_label_issue`. By default two such runs: the presets' faithful ACT (collapse guard off)
  and ACT with the collapse guard on, as your own data and `--budget` get it (`--guard`).
- cleanlab: the same network (the paper's CNN) trained with plain cross-entropy
  (`method.name=standard`, asymco's own training code) K times, each on K-1 folds for the same
  number of epochs, predicting the held-out fold; then `cleanlab.filter.find_label_issues` and
  `cleanlab.rank.get_label_quality_scores` (both at cleanlab's defaults) on those out-of-sample
  probabilities.

Figures against the clean CIFAR-100 labels: AUROC of each score for "the given label is
correct", precision / recall / F1 of each flagged set for "the given label is wrong", the flagged
counts, the subset's true noise rate, and each side's wall time and CPU time (all threads) in
this process. Settings are the presets' own, with a shorter schedule in the presets' proportions
(a third of the epochs warmup, then the cosine decay); nothing is tuned on these data.

    pip install "asymco[compare]"      # cleanlab
    python benchmarks/label_issues.py --data-dir ../shared/data --out runs/label-issues
    python benchmarks/label_issues.py --data-dir ../shared/data --out /tmp/li --quick

Prints a markdown table (also written to OUT/table.md, with OUT/results.json); the last line
printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from asymco import api
from asymco.errors import UserError

DATASETS = {  # label in the table -> asymco preset
    "CIFAR-100N human": "cifar100n-human",
    "CIFAR-100 sym-20%": "cifar100n-sym20",
}
GUARDS = {  # --guard -> the ACT runs: (tool key, table label, method.collapse_guard)
    "off": [("asymco", "asymco (ACT, faithful)", "false")],
    "on": [("asymco_guard", "asymco (ACT + collapse guard)", "true")],
}
GUARDS["both"] = GUARDS["off"] + GUARDS["on"]
FULL = {"subset": 3000, "epochs": 10, "folds": 3, "test_subset": 500}
QUICK = {"subset": 400, "epochs": 2, "folds": 2, "test_subset": 200}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="../shared/data", help="holds cifar100.npz, CIFAR-N")
    p.add_argument("--out", required=True, help="folder for runs, results.json and table.md")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the path, no figures")
    p.add_argument("--subset", type=int, help=f"training images (default {FULL['subset']})")
    p.add_argument("--epochs", type=int, help=f"epochs per run (default {FULL['epochs']})")
    p.add_argument("--folds", type=int, help=f"cleanlab's K (default {FULL['folds']})")
    p.add_argument("--test-subset", type=int, help="test images ACT evaluates each epoch")
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    p.add_argument("--guard", choices=list(GUARDS), default="both",
                   help="ACT's collapse guard: off (the presets' faithful ACT), on (own data's "
                        "default), or both side by side (default)")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.folds < 2:
        p.error("--folds must be at least 2")
    return args


def require_cleanlab():
    try:
        import cleanlab.filter
        import cleanlab.rank
    except ImportError:
        raise UserError('this benchmark needs cleanlab: pip install "asymco[compare]"') from None
    return cleanlab


def schedule(epochs: int) -> list[str]:
    """The presets' schedule shortened in its proportions: a third warmup, then cosine to the
    end (the presets: 50 of 150 epochs, `cosine:50,5e-4,150`)."""
    warmup = max(1, epochs // 3) if epochs > 1 else 0
    return [
        f"train.epochs={epochs}",
        f"train.warmup_epochs={warmup}",
        f"optim.lr_decay=cosine:{warmup},5e-4,{epochs}",
        "train.progress=false",
    ]


def run_act(preset: str, args: argparse.Namespace, out: Path, guard: str) -> dict:
    """One ACT run (`guard`: its method.collapse_guard); its label table in training-set order,
    and its wall time."""
    from asymco.label_issues import read_label_issues

    overrides = [
        *schedule(args.epochs),
        f"data.subset={args.subset}",
        f"data.test_subset={args.test_subset}",
        f"method.collapse_guard={guard}",
    ]
    cfg = api.resolve_config(preset, overrides, data_dir=args.data_dir)
    started, cpu = time.perf_counter(), time.process_time()
    result = api.train(cfg, out_dir=out)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    rows = sorted(read_label_issues(out / "label_issues.csv"), key=lambda r: int(r["index"]))
    return {
        "index": np.array([int(r["index"]) for r in rows]),
        "given": np.array([int(r["given_label"]) for r in rows]),
        "score": np.array([float(r["label_score"]) for r in rows]),
        "flagged": np.array([r["is_label_issue"] == "True" for r in rows]),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "test_acc": result.summary["test_acc_last10_mean"],
        "label_trust": (result.summary.get("label_trust") or {}).get("level"),
    }


def run_cleanlab(preset: str, args: argparse.Namespace, out: Path) -> dict:
    """K-fold out-of-sample probabilities from plain cross-entropy training of the same net,
    then cleanlab's label issues and label quality scores; timed as a whole."""
    cleanlab = require_cleanlab()
    from sklearn.model_selection import StratifiedKFold

    from asymco.data.prepare import prepare_data

    started, cpu = time.perf_counter(), time.process_time()
    act_cfg = api.resolve_config(preset, [f"data.subset={args.subset}"], data_dir=args.data_dir)
    data = prepare_data(act_cfg.data, act_cfg.noise)  # the subset and labels ACT trained on
    labels = data.noisy_label
    probs = np.zeros((len(labels), data.num_classes), dtype=np.float64)
    folds = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=0)
    accs = []
    for k, (fit, held) in enumerate(folds.split(np.zeros(len(labels)), labels)):
        probs[held], acc = _fold(preset, args, data, fit, held, out / f"fold{k}")
        accs.append(acc)
    issues = cleanlab.filter.find_label_issues(labels, probs)
    score = cleanlab.rank.get_label_quality_scores(labels, probs)
    return {
        "index": data.source_index,
        "given": labels,
        "score": score,
        "flagged": issues,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "heldout_acc": float(np.mean(accs)),
    }


def _fold(preset, args, data, fit: np.ndarray, held: np.ndarray, out: Path):
    """Train `standard` on the `fit` positions (the held-out fold is the run's test split) and
    return the held-out softmax and the run's last-10 held-out accuracy (against the noisy
    labels)."""
    import torch

    from asymco.data.loader import array_batches, normalizer_for, to_device_images
    from asymco.engine.evaluate import predict_probs

    out.mkdir(parents=True, exist_ok=True)
    npz = out / "fold.npz"
    np.savez(
        npz,
        x_train=data.images[fit],
        y_train=data.noisy_label[fit],
        x_test=data.images[held],
        y_test=data.noisy_label[held],
        class_names=np.asarray(data.classes, dtype=str),
    )
    overrides = [*schedule(args.epochs), "method.name=standard", "noise.kind=none"]
    cfg = api.resolve_own_data(f"npz:{npz}", None, overrides, preset=preset)
    result = api.train(cfg, out_dir=out / "run")
    device = next(result.model.parameters()).device
    images = data.images[held]
    batches = array_batches(
        to_device_images(images, device),
        torch.from_numpy(data.noisy_label[held]).to(device),
        batch_size=256,
        normalize=normalizer_for(images, cfg.data.normalize, device),
    )
    probs = predict_probs(result.model, batches, data.num_classes).cpu().numpy()
    return probs, result.summary["test_acc_last10_mean"]


def figures(side: dict, wrong: np.ndarray) -> dict:
    """AUROC of the score for 'the given label is correct'; precision, recall and F1 of the
    flagged set for 'the given label is wrong'."""
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    score = np.asarray(side["score"], dtype=np.float64)
    flagged = np.asarray(side["flagged"], dtype=bool)
    both = 0 < wrong.sum() < len(wrong)  # AUROC needs right and wrong labels
    auroc = float(roc_auc_score(~wrong, score)) if both else float("nan")
    precision, recall, f1, _ = precision_recall_fscore_support(
        wrong, flagged, average="binary", zero_division=0
    )
    return {
        "auroc": round(auroc, 4),
        "precision": round(float(precision), 4),
        "recall": round(float(recall), 4),
        "f1": round(float(f1), 4),
        "flagged": int(flagged.sum()),
        "wall_seconds": round(side["seconds"], 1),
        "cpu_seconds": round(side["cpu_seconds"], 1),
        # asymco: the RTM's last-10 test accuracy (CIFAR test subset); cleanlab: the fold nets'
        # last-10 accuracy on their held-out folds against the given (noisy) labels
        **{k: round(side[k], 2) for k in ("test_acc", "heldout_acc") if k in side},
        **({"label_trust": side["label_trust"]} if side.get("label_trust") else {}),
    }


def compare(name: str, preset: str, args: argparse.Namespace, clean: np.ndarray) -> dict:
    """Both tools on one data set; both score the same images with the same given labels."""
    out = Path(args.out) / preset
    sides = {}
    for tool, _, guard in GUARDS[args.guard]:
        folder = out / ("act-guard" if guard == "true" else "act")
        sides[tool] = run_act(preset, args, folder, guard)
        print(f"{name}: {tool} done in {sides[tool]['seconds']:.0f}s", file=sys.stderr, flush=True)
    lab = sides["cleanlab"] = run_cleanlab(preset, args, out / "cleanlab")
    print(f"{name}: cleanlab done in {lab['seconds']:.0f}s", file=sys.stderr, flush=True)
    for key in ("index", "given"):
        for tool, side in sides.items():
            if not np.array_equal(side[key], lab[key]):
                raise RuntimeError(f"{name}: {tool} and cleanlab saw different samples ({key})")
    wrong = lab["given"] != clean[lab["index"]]
    return {
        "dataset": name,
        "preset": preset,
        "train_images": len(wrong),
        "noise_rate": round(float(wrong.mean()), 4),
        **{tool: figures(side, wrong) for tool, side in sides.items()},
    }


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "| data set (noise rate) | tool | AUROC | precision | recall | F1 | flagged "
        "| wall time | CPU time |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        tools = [(tool, label) for tool, label, _ in GUARDS[args.guard]]
        for tool, label in [*tools, ("cleanlab", f"cleanlab ({args.folds}-fold CE)")]:
            f = row[tool]
            lines.append(
                f"| {row['dataset']} ({row['noise_rate']:.1%}) | {label} | {f['auroc']:.3f} | "
                f"{f['precision']:.3f} | {f['recall']:.3f} | {f['f1']:.3f} | "
                f"{f['flagged']} / {row['train_images']} | {f['wall_seconds']:.0f} s "
                f"| {f['cpu_seconds']:.0f} s |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        require_cleanlab()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with np.load(Path(args.data_dir) / "cifar100.npz") as archive:
        clean = archive["y_train"]
    rows = [compare(name, DATASETS[name], args, clean) for name in args.datasets]
    import cleanlab

    results = {
        "rows": rows,
        "settings": {
            "train_images": args.subset,
            "epochs": args.epochs,
            "schedule": schedule(args.epochs)[:3],
            "folds": args.folds,
            "act_test_subset": args.test_subset,
            "collapse_guard": args.guard,
            "quick": args.quick,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor(),
            "platform": platform.platform(),
        },
        "versions": {"cleanlab": cleanlab.__version__},
    }
    md = table(rows, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(md)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(md, file=sys.stderr)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
