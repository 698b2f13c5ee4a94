"""Proposal quality on the synthetic shapes, at the figures docs/annotate.md states (measured over
90 objects by benchmarks/bench_annotate_proposals.py; here over the objects of 16 images)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from annotate_helpers import iou, objects
from pixelwise.annotate.classical import classical_proposal, grabcut, watershed
from pixelwise.annotate.prompts import Click, Prompt
from pixelwise.data.synthetic import SyntheticShapes


def _interior(obj: np.ndarray) -> tuple[int, int]:
    distance = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(distance.argmax()), obj.shape)
    return int(x), int(y)


def test_box_grabcut_and_click_watershed_iou_on_synthetic_shapes():
    data = SyntheticShapes(16, image_size=64, seed=99)
    boxes, clicks = [], []
    for i in range(16):
        image, mask = data.generate(i)
        for cls, box, obj in objects(mask, min_area=41):
            boxes.append(iou(grabcut(image, Prompt(class_id=cls, box=tuple(box))), obj))
            x, y = _interior(obj)
            clicks.append(iou(watershed(image, Prompt(class_id=cls, clicks=(Click(x, y, True),))), obj))
    assert len(boxes) >= 30
    assert np.mean(boxes) >= 0.97, np.mean(boxes)   # docs: 0.990 mean IoU from a tight box
    assert np.mean(clicks) >= 0.60, np.mean(clicks)  # docs: a single click is a much weaker prompt


def test_classical_proposal_picks_grabcut_for_a_box_and_watershed_for_clicks():
    image, mask = SyntheticShapes(1, image_size=64, seed=99).generate(0)
    cls, box, obj = objects(mask)[0]
    assert classical_proposal(image, Prompt(class_id=cls, box=tuple(box)))[1] == "grabcut"
    x, y = _interior(obj)
    assert classical_proposal(image, Prompt(class_id=cls, clicks=(Click(x, y),)))[1] == "watershed"
    # A box over the whole image leaves GrabCut no background sample: the click's watershed decides.
    whole = Prompt(class_id=cls, box=(0, 0, 64, 64), clicks=(Click(x, y),))
    assert (grabcut(image, whole) == watershed(image, Prompt(class_id=cls, clicks=(Click(x, y),)))).all()
    assert grabcut(image, Prompt(class_id=cls, box=(0, 0, 64, 64))).all()  # and without one, the box itself
