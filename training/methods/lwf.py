"""LwF: distillation from the previous step's model on the current batch (Li & Hoiem 2017, as
TiC-CLIP applies it to CLIP): KL divergence between the teacher's and the student's
image->text and text->image logit distributions at temperature ``temperature`` (default
1.0), weighted by ``weight`` (default 1.0), added to the task loss (``Method.task_loss``; in
class-incremental streams the texts are the batch's distinct class prompts)."""
import torch
import torch.nn.functional as F

from training.methods.base import Method, clip_features


def distill_logits(student_img, student_txt, teacher_img, teacher_txt, scale_s, scale_t, temperature: float):
    s = scale_s * student_img @ student_txt.T / temperature
    with torch.no_grad():
        t = scale_t * teacher_img @ teacher_txt.T / temperature
    kl = lambda a, b: F.kl_div(F.log_softmax(a, dim=1), F.log_softmax(b, dim=1), log_target=True, reduction="batchmean")
    return 0.5 * (kl(s, t) + kl(s.T, t.T)) * temperature**2


class LwF(Method):
    name = "lwf"
    needs_prev_model = True

    def loss(self, ctx, model, images, tokens, ids):
        contrastive, (img, txt, scale) = self.task_loss(ctx, model, images, tokens)
        if ctx.prev_model is None:
            return contrastive, {"contrastive": float(contrastive.detach())}
        with torch.no_grad():
            t_img, t_txt, t_scale = clip_features(ctx.prev_model, images, self.texts(tokens))
        distill = distill_logits(img, txt, t_img, t_txt, scale, t_scale, self.option("temperature", 1.0))
        total = contrastive + self.option("weight", 1.0) * distill
        return total, {"contrastive": float(contrastive.detach()), "distill": float(distill.detach())}
