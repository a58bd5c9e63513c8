"""A plotext plot of one or more series over updates, redrawn on demand (the Monitor's timer),
never per event. The data lives outside the widget (a run's history); ``replot`` draws it
downsampled to about twice the plot's width, keeping extremes."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual_plotext import PlotextPlot

from ..runs import downsample


@dataclass(frozen=True)
class Line:
    name: str  # key into the series mapping
    label: str
    color: str
    marker: str = "braille"


class MetricPlot(PlotextPlot):
    """``replot(series)`` with ``series = {name: (xs, ys)}``: clear, plot each line, refresh."""

    DEFAULT_CSS = """
    MetricPlot { height: 1fr; width: 1fr; min-height: 6; }
    """

    def __init__(self, title: str, lines: list[Line], *, ylabel: str = "", id: str | None = None,
                 waiting_for: str = "the first update"):
        super().__init__(id=id)
        self.title = title
        self.waiting_for = waiting_for  # what brings its first point
        self.lines = lines
        self.ylabel = ylabel
        self._has_data = False
        self._series: dict[str, tuple[list, list]] = {}

    def on_resize(self) -> None:
        if self._has_data:
            self.replot(self._series)  # downsample again for the new width

    def replot(self, series: dict[str, tuple[list, list]]) -> None:
        self._series = series
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title)
        plt.xlabel("update")
        if self.ylabel:
            plt.ylabel(self.ylabel)
        width = max(20, self.size.width or 60)
        self._has_data = False
        for line in self.lines:
            xs, ys = series.get(line.name, ([], []))
            if not xs:
                continue
            xs, ys = downsample(xs, ys, 2 * width)
            plt.plot(xs, ys, label=line.label, color=line.color, marker=line.marker)
            self._has_data = True
        self.refresh()

    def render(self):
        if not self._has_data:
            return Text(f"{self.title}: waiting for {self.waiting_for}", style="dim")
        try:
            return super().render()
        except Exception as e:  # noqa: BLE001 - plotext can fail on odd sizes; say so instead of crashing
            return Text(f"{self.title}: cannot draw this plot ({type(e).__name__}: {e}).", style="dim")
