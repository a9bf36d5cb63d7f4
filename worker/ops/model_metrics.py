"""Prometheus gauges of the served models: state, memory, loads and evictions, jobs in
hand, and the memory budget (read from the model manager at each collection)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.llm.manager import ModelState, ModelView
from worker.llm.memory import Memory, gpu_figure


class ModelCollector(Collector):
    """`edge_worker_model_*` and `edge_worker_memory_budget_bytes`."""

    def __init__(self, views: Callable[[], list[ModelView]], budget: Memory) -> None:
        self.views = views
        self.budget = budget

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "edge_worker_memory_budget_bytes",
                "What the models may take together (memory_budget), by device",
                labels=["device"],
            ),
            GaugeMetricFamily(
                "edge_worker_model_state",
                "1 for the state each served model is in",
                labels=["model", "state"],
            ),
            GaugeMetricFamily(
                "edge_worker_model_memory_bytes",
                "A model's memory: estimated from its GGUF, measured at its last load, and "
                "counted against the budget (the larger)",
                labels=["model", "figure"],
            ),
            GaugeMetricFamily(
                "edge_worker_model_loads",
                "Times each model was loaded since start",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "edge_worker_model_evictions",
                "Times each model was unloaded to make room for another since start",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "edge_worker_model_jobs_in_hand",
                "Jobs claimed for each model and not finished",
                labels=["model"],
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        budget, state, memory, loads, evictions, in_hand = self._families()
        budget.add_metric(["host"], self.budget.host)
        gpu = gpu_figure(self.budget.gpu)
        if gpu is not None:
            budget.add_metric(["gpu"], gpu)
        for view in self.views():
            for name in ModelState:
                state.add_metric([view.name, name.value], 1 if view.state == name else 0)
            memory.add_metric([view.name, "estimated"], view.estimate.total)
            if view.measured is not None:
                memory.add_metric([view.name, "measured"], view.measured.host + view.measured.gpu)
            memory.add_metric([view.name, "counted"], view.memory.host + view.memory.gpu)
            loads.add_metric([view.name], view.loads)
            evictions.add_metric([view.name], view.evictions)
            in_hand.add_metric([view.name], view.in_hand)
        return [budget, state, memory, loads, evictions, in_hand]
