"""The full CondInst/BoxInst training loss for one batch: FCOS targets, detection losses, the
choice of instances, and the mask loss of the configured supervision mode."""
from __future__ import annotations

import torch
import torch.distributed as dist

from boxinst_serve.config import ModelConfig
from boxinst_serve.model.condinst import HeadOutputs
from boxinst_serve.model.dynamic_head import dynamic_mask_logits
from boxinst_serve.model.detect import flatten_outputs
from training.collapse import mask_statistics
from training.config import LossConfig
from training.detection_losses import centerness_loss, focal_loss, giou_loss
from training.hole_loss import enclosed_background_targets, hole_loss
from training.losses import (boxes_to_bitmasks, dice_loss, downsample_masks, image_color_similarity, image_lab,
                             pairwise_loss, pairwise_warmup_factor, projection_loss, valid_pixel_mask)
from training.targets import centerness_target, fcos_targets, sample_mask_instances


def _mean_over_processes(value: float, device) -> float:
    """Average a scalar over data-parallel processes (as AdelaiDet's reduce_sum / world size)."""
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([value], dtype=torch.float32, device=device)
        dist.all_reduce(t)
        return t.item() / dist.get_world_size()
    return value


def compute_losses(out: HeadOutputs, batch: dict, cfg: ModelConfig, loss_cfg: LossConfig,
                   iteration: int, stats: dict | None = None, pairwise_from: int = 0) -> dict[str, torch.Tensor]:
    """out: the model's outputs for batch["images"] uint8 [B, Hp, Wp, 3]; batch as built by
    training.data.collate. Returns named scalar losses (their sum is the training loss). When
    `stats` is a dict, it receives training.collapse.mask_statistics of the instances with a
    box-only mask loss (nothing when there were none). The pairwise warm-up counts from iteration
    `pairwise_from` (0; the last heal's iteration after one, training/heal.py)."""
    images = batch["images"]
    device = out.mask_feats.device
    _, hp, wp, _ = images.shape
    flat = flatten_outputs(out, cfg)

    labels, reg_t, gt_idx = [], [], []
    for b, tgt in enumerate(batch["targets"]):
        lb, rg, gi = fcos_targets(flat["locations"], flat["levels"], flat["strides"],
                                  tgt["boxes"].to(device), tgt["labels"].to(device), cfg)
        labels.append(lb), reg_t.append(rg), gt_idx.append(gi)
    labels = torch.stack(labels)  # [B, L]
    reg_t = torch.stack(reg_t)  # [B, L, 4]
    gt_idx = torch.stack(gt_idx)  # [B, L]

    pos = labels != cfg.num_classes
    num_pos_avg = max(_mean_over_processes(float(pos.sum()), device), 1.0)
    losses = {"loss_fcos_cls": focal_loss(flat["cls_logits"].flatten(0, 1).float(), labels.flatten(),
                                          num_pos_avg, loss_cfg.focal_alpha, loss_cfg.focal_gamma)}

    pos_b, pos_l = pos.nonzero(as_tuple=True)
    ctr_t = centerness_target(reg_t[pos_b, pos_l])
    ctr_sum_avg = max(_mean_over_processes(float(ctr_t.sum()), device), 1e-6)
    reg_p = flat["bbox_reg"][pos_b, pos_l].float()
    ctr_p = flat["centerness"][pos_b, pos_l].float()
    zero = flat["bbox_reg"].sum() * 0 + flat["centerness"].sum() * 0
    if pos_b.numel():
        losses["loss_fcos_loc"] = giou_loss(reg_p, reg_t[pos_b, pos_l], ctr_t, ctr_sum_avg)
        losses["loss_fcos_ctr"] = centerness_loss(ctr_p, ctr_t, num_pos_avg)
    else:
        losses["loss_fcos_loc"] = zero
        losses["loss_fcos_ctr"] = zero
    losses.update(_mask_losses(out, flat, batch, cfg, loss_cfg, iteration, pos_b, pos_l, gt_idx, hp, wp, stats,
                               pairwise_from))
    return losses


def _mask_losses(out, flat, batch, cfg: ModelConfig, loss_cfg: LossConfig, iteration: int,
                 pos_b, pos_l, gt_idx, hp: int, wp: int, stats: dict | None = None,
                 pairwise_from: int = 0) -> dict[str, torch.Tensor]:
    device = out.mask_feats.device
    # Which foreground locations get a mask loss (TOPK_PROPOSALS_PER_IM, per image).
    with torch.no_grad():
        quality = (flat["cls_logits"][pos_b, pos_l].sigmoid().max(dim=1).values
                   * flat["centerness"][pos_b, pos_l].sigmoid())
    keep = []
    for b in range(len(batch["targets"])):
        idx = (pos_b == b).nonzero().squeeze(1)
        sel = sample_mask_instances(gt_idx[b, pos_l[idx]], quality[idx], loss_cfg.topk_proposals_per_image)
        keep.append(idx[sel])
    keep = torch.cat(keep)
    sel_b, sel_l = pos_b[keep], pos_l[keep]
    sel_gt = gt_idx[sel_b, sel_l]
    zero = out.mask_feats.sum() * 0 + flat["controller"].sum() * 0
    if keep.numel() == 0 or (loss_cfg.supervision == "box" and loss_cfg.box_loss == "none"):
        return {"loss_prj": zero, "loss_pairwise": zero, "loss_mask": zero,
                **({"loss_hole": zero} if loss_cfg.hole_loss_weight > 0 else {})}

    logits = dynamic_mask_logits(out.mask_feats, flat["controller"][sel_b, sel_l], flat["locations"][sel_l],
                                 flat["levels"][sel_l], sel_b, cfg).float()  # [N, 1, Hp/4, Wp/4]
    stride = cfg.mask_out_stride
    gt_boxes = torch.stack([batch["targets"][b]["boxes"][g] for b, g in zip(sel_b.tolist(), sel_gt.tolist())]).to(device)
    box_masks = boxes_to_bitmasks(gt_boxes, hp, wp, stride)

    has_mask = torch.tensor([bool(batch["targets"][b]["has_mask"][g]) if batch["targets"][b].get("masks") is not None
                             else False for b, g in zip(sel_b.tolist(), sel_gt.tolist())], device=device)
    if loss_cfg.supervision == "box":
        has_mask = torch.zeros_like(has_mask)
    elif loss_cfg.supervision == "mask" and not bool(has_mask.all()):
        raise ValueError("supervision 'mask' needs a segmentation for every instance")
    n = logits.shape[0]
    losses = {"loss_prj": zero, "loss_pairwise": zero, "loss_mask": zero}
    if loss_cfg.hole_loss_weight > 0:
        losses["loss_hole"] = zero

    if bool(has_mask.any()):
        m_idx = has_mask.nonzero().squeeze(1)
        gt_masks = torch.stack([batch["targets"][sel_b[i]]["masks"][sel_gt[i]] for i in m_idx.tolist()]).to(device)
        targets = downsample_masks(gt_masks, stride)
        losses["loss_mask"] = dice_loss(logits[m_idx].sigmoid(), targets).sum() / n

    box_idx = (~has_mask).nonzero().squeeze(1)
    if box_idx.numel() and loss_cfg.box_loss != "none":
        lg, bm = logits[box_idx], box_masks[box_idx]
        if stats is not None:
            stats.update(mask_statistics(lg, bm))
        if loss_cfg.box_loss == "filled_box":
            losses["loss_mask"] = losses["loss_mask"] + dice_loss(lg.sigmoid(), bm).sum() / n
        else:
            losses["loss_prj"] = projection_loss(lg, bm).sum() / n
            if loss_cfg.box_loss == "boxinst":
                valid = valid_pixel_mask(batch["image_sizes"], [s[0] for s in batch["orig_sizes"]], hp, wp,
                                         loss_cfg.bottom_pixels_removed).to(device)
                with torch.no_grad():
                    lab = image_lab(batch["images"].to(device), stride)
                    sim = image_color_similarity(batch["images"], valid, stride, loss_cfg.pairwise_size,
                                                 loss_cfg.pairwise_dilation, loss_cfg.pairwise_theta, lab=lab)
                warm = pairwise_warmup_factor(iteration - pairwise_from, loss_cfg.pairwise_warmup_iters)
                losses["loss_pairwise"] = warm * pairwise_loss(
                    lg, sim[sel_b[box_idx]], bm, loss_cfg.pairwise_color_thresh,
                    loss_cfg.pairwise_size, loss_cfg.pairwise_dilation)
                if loss_cfg.hole_loss_weight > 0 and iteration >= loss_cfg.hole_loss_start_iters:
                    start = stride // 2
                    holes = enclosed_background_targets(lab, bm, sel_b[box_idx], valid[:, start::stride, start::stride],
                                                        loss_cfg.hole_margin, loss_cfg.pairwise_theta,
                                                        loss_cfg.hole_color_thresh)
                    losses["loss_hole"] = loss_cfg.hole_loss_weight * warm * hole_loss(lg, holes, bm, loss_cfg.hole_normalize)
    return losses
