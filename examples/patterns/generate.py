"""Random IONs for the paper's evaluation: 2 to 10 dependent pipelines mixing the patterns of
Figure 1 (training, dependent retraining, batch and streaming inference, model transfer,
approval by rule, ensemble, A/B split, canary). Used by the tests and the benchmark."""

from __future__ import annotations

import random
from typing import Any

import yaml

STEPS = "examples.patterns.steps"
DATASET = "iris"


def _train(model: str, dataset: str, trees: int) -> dict[str, Any]:
    params: dict[str, Any] = {"model": model}
    if model == "tree":
        params["max_depth"] = 3
    if model == "forest":
        params["n_estimators"] = trees
    return {
        "pipeline": {
            "components": {
                "load": {"call": f"{STEPS}:load", "params": {"dataset": dataset}},
                "fit": {"call": f"{STEPS}:fit", "after": ["load"], "params": params},
                "evaluate": {"call": f"{STEPS}:evaluate", "after": ["fit"]},
            },
            "outputs": {"model": "fit"},
        }
    }


def _refit(dataset: str) -> dict[str, Any]:
    return {
        "pipeline": {
            "components": {
                "load": {"call": f"{STEPS}:load", "params": {"dataset": dataset, "test_size": 0.4}},
                "refit": {"call": f"{STEPS}:refit", "after": ["load"]},
                "evaluate": {"call": f"{STEPS}:evaluate_refit", "after": ["refit"]},
            },
            "outputs": {"model": "refit"},
        }
    }


def _score(streaming: bool, dataset: str) -> dict[str, Any]:
    node: dict[str, Any] = {
        "pipeline": {
            "components": {"score": {"call": f"{STEPS}:score", "params": {"dataset": dataset}}}
        }
    }
    if streaming:
        node["streaming"] = {"batches": 3, "batch_size": 10, "score": "score"}
    return node


def random_ion(
    seed: int,
    name: str,
    pipelines: int | None = None,
    *,
    dataset: str = DATASET,
    models: tuple[str, ...] = ("logreg", "tree"),
    trees: int = 10,
) -> dict[str, Any]:
    """An ION with ``pipelines`` pipeline nodes (2..10 when not given), all connected.
    ``models`` are the kinds training pipelines pick from; ``trees`` sizes the forests."""
    rng = random.Random(seed)
    n = pipelines or rng.randint(2, 10)
    nodes: dict[str, Any] = {}
    edges: list[dict[str, str]] = []
    producers: list[str] = []  # nodes whose "model" output others can take
    combined: set[str] = set()  # producers of ensembles/splits, which cannot be refitted
    count = 0

    def add_pipeline(node: dict[str, Any]) -> str:
        nonlocal count
        nid = f"p{count}"
        count += 1
        nodes[nid] = node
        return nid

    first = add_pipeline(_train(rng.choice(models), dataset, trees))
    producers.append(first)
    while count < n:
        roll = rng.random()
        if roll < 0.2 and count + 1 < n:
            second = add_pipeline(_train(rng.choice(models), dataset, trees))
            producers.append(second)
            a, b = rng.sample(producers, 2)
            kind = rng.choice(["ensemble", "ab_split"])
            pid = f"{kind}{count}"
            nodes[pid] = (
                {"policy": "ensemble", "params": {"members": [a, b], "method": "vote"}}
                if kind == "ensemble"
                else {"policy": "ab_split", "params": {"weights": {a: 0.6, b: 0.4}}}
            )
            edges += [
                {"from": a, "to": pid, "carries": "model"},
                {"from": b, "to": pid, "carries": "model"},
            ]
            producers.append(pid)
            combined.add(pid)
            continue
        source = rng.choice(producers)
        if rng.random() < 0.4:
            kind = rng.choice(["approval", "model_transfer"])
            pid = f"{'gate' if kind == 'approval' else 'transfer'}{count}"
            is_pipeline = "pipeline" in nodes[source]
            if kind == "approval" and is_pipeline:
                nodes[pid] = {
                    "policy": "approval",
                    "params": {"auto_if": "stats.accuracy >= 0.5", "timeout_s": 60},
                }
            else:
                nodes[pid] = {"policy": "model_transfer"}
            edges.append({"from": source, "to": pid, "carries": "model"})
            producers.append(pid)
            if source in combined:
                combined.add(pid)
            source = pid
        roll = rng.random()
        if roll < 0.4 and source not in combined:
            nid = add_pipeline(_refit(dataset))
            edges.append({"from": source, "to": nid, "carries": "model"})
            producers.append(nid)
        elif roll < 0.6 and count + 2 <= n and len(producers) >= 2:
            primary = add_pipeline(_score(True, dataset))
            control_source = rng.choice([p for p in producers if p != source])
            control = add_pipeline(_score(True, dataset))
            canary = f"canary{count}"
            nodes[canary] = {
                "policy": "canary",
                "params": {"control": control, "max_disagreement": 0.5},
            }
            edges += [
                {"from": source, "to": primary, "carries": "model"},
                {"from": control_source, "to": control, "carries": "model"},
                {"from": source, "to": canary, "carries": "model"},
            ]
        else:
            nid = add_pipeline(_score(rng.random() < 0.5, dataset))
            edges.append({"from": source, "to": nid, "carries": "model"})
    return {"name": name, "nodes": nodes, "edges": edges}


def random_ion_yaml(seed: int, name: str, pipelines: int | None = None, **kwargs: Any) -> str:
    return yaml.safe_dump(random_ion(seed, name, pipelines, **kwargs), sort_keys=False)
