import numpy as np

from model.annotator.clicker import generate_trajectory, next_click
from model.core.clicks import Click
from model.core.masks import disk, iou


def box_to_mask(box, shape):
    x1, y1, x2, y2 = box
    mask = np.zeros(shape, bool)
    mask[y1:y2, x1:x2] = True
    return mask


def test_first_click_is_the_centre_of_the_object():
    target = box_to_mask((10, 20, 31, 41), (60, 60))
    click = next_click(np.zeros_like(target), target)
    assert click.positive and abs(click.x - 20) <= 1 and abs(click.y - 30) <= 1


def test_negative_click_on_the_largest_wrong_region():
    target = box_to_mask((0, 0, 20, 20), (60, 60))
    pred = target | box_to_mask((30, 30, 50, 50), (60, 60))
    click = next_click(pred, target)
    assert not click.positive and 30 <= click.x < 50 and 30 <= click.y < 50


def test_no_click_when_nothing_is_wrong_and_ignore_is_respected():
    target = box_to_mask((5, 5, 15, 15), (20, 20))
    assert next_click(target, target) is None
    assert next_click(np.zeros_like(target), target, ignore=np.ones_like(target)) is None


def _oracle_tool(target):
    """A tool that reveals a disk of the truth around each click: enough to test the bookkeeping."""

    def segment(clicks, previous):
        mask = np.zeros_like(target) if previous is None else previous.copy()
        for c in clicks:
            area = disk(target.shape, c, 6)
            mask[area] = target[area] if c.positive else mask[area] & target[area]
        return mask

    return segment


def test_trajectory_reaches_the_target_and_records_every_step():
    target = box_to_mask((10, 10, 40, 40), (50, 50))
    trajectory = generate_trajectory(_oracle_tool(target), target, target_iou=0.95, max_clicks=30)
    assert trajectory.steps[-1].iou >= 0.95
    assert len(trajectory.steps) == len(trajectory.clicks) >= 2
    for before, step in zip([trajectory.initial_mask] + [s.mask_after for s in trajectory.steps], trajectory.steps):
        assert (step.mask_before == before).all()
        assert step.iou == iou(step.mask_after, target)


def test_trajectory_from_an_initial_mask_starts_there():
    target = box_to_mask((10, 10, 40, 40), (50, 50))
    start = box_to_mask((10, 10, 40, 30), (50, 50))
    trajectory = generate_trajectory(_oracle_tool(target), target, initial_mask=start, max_clicks=3)
    assert trajectory.initial_iou == iou(start, target)
    assert trajectory.steps[0].mask_before is not None and (trajectory.steps[0].mask_before == start).all()


def test_useless_clicks_are_dropped():
    target = box_to_mask((10, 10, 40, 40), (50, 50))

    def stubborn(clicks, previous):  # never changes anything
        return np.zeros_like(target) if previous is None else previous

    kept = generate_trajectory(stubborn, target, max_clicks=5, drop_useless_clicks=True)
    assert kept.steps == []
    assert len(generate_trajectory(stubborn, target, max_clicks=5).steps) == 5


def test_click_helpers():
    assert Click(-3, 500, True).clipped(100, 50) == Click(0.0, 49.0, True)
    assert not Click(100, 0, True).inside(100, 50)
