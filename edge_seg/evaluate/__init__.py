"""Evaluation against ground truth: semantic metrics (IoU, Dice, confusion) and COCO mask AP for instances."""
