"""Interactive segmentation: click files in, click maps for the network, the click rule.

`clicks` reads the organisers' click file (PET voxel indices, (x, y, z)) and maps the
points onto the network grid; `maps` draws them as click map channels, as the weights'
encoding says; `rule` honours every click on any mask; `session` stands beside the
Predictor (one call, or a case over many clicks) and `cache` keeps sessions between
calls; `simulate` and `scribbles` draw clicks from a truth as the organisers do (their
scoring is `petseg.evaluation.interactive`).
"""

from petseg.interactive.clicks import CLICK_CHANNELS, Clicks, clicks_on_grid, read_click_file
from petseg.interactive.maps import CLICK_RADIUS_MM, click_maps_on_grid, render_click_maps

__all__ = [
    "CLICK_CHANNELS",
    "CLICK_RADIUS_MM",
    "Clicks",
    "click_maps_on_grid",
    "clicks_on_grid",
    "read_click_file",
    "render_click_maps",
]
