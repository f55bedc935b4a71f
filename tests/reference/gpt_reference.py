"""The PyTorch reference of stability's GPT, written independently from the C++ model,
in float64 with autograd, from the formulas of DESIGN.md §2 and stability/ops/backend.h.

    ref = GptReference(config, params, buffers)   # numpy arrays from a debug dump
    out = ref.run(input_ids, targets)             # loss, logits, grads, telemetry

The σ-reparam vectors u, v are taken from the dump (the C++ model's power-iteration step
already ran); like the C++ backward, σ = uᵀWv is differentiated with u, v held constant.
"""
import math

import torch


class GptReference:
    def __init__(self, config, params, buffers, dtype=torch.float64, telemetry=True):
        self.c = config
        self.p = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in params.items()}
        self.b = {k: torch.tensor(v, dtype=dtype) for k, v in buffers.items()}
        self.telemetry = {}
        self.record = telemetry  # False: no telemetry (for throughput comparisons)

    # -- pieces -------------------------------------------------------------------------
    def norm(self, name, x, width):
        c = self.c
        shape = x.shape
        x = x.reshape(-1, width)
        g = self.p[name + ".weight"]
        if c["norm"] == "layernorm":
            y = torch.nn.functional.layer_norm(x, (width,), g, self.p.get(name + ".bias"), c["norm_eps"])
        else:
            ms = (x * x).mean(-1, keepdim=True)
            y = x / torch.sqrt(ms + c["norm_eps"]) * g
        return y.reshape(shape)

    def linear(self, name, x):
        w = self.p[name + ".weight"]
        if name + ".sigma_gain" in self.p:
            u, v = self.b[name + ".sigma_u"], self.b[name + ".sigma_v"]
            sigma = u @ w @ v
            w = self.p[name + ".sigma_gain"][0] / sigma * w
        y = x @ w.T
        if name + ".bias" in self.p:
            y = y + self.p[name + ".bias"]
        if self.record:
            self.telemetry[name + ".out_norm"] = y.detach().norm(dim=-1).mean().item()
            self.telemetry[name + ".in_norm"] = x.detach().norm(dim=-1).mean().item()
            self.telemetry[name + ".weight_norm"] = w.detach().norm().item()
        return y

    def rope(self, x):  # x: [B, T, H, hd], GPT-NeoX half rotation
        B, T, H, hd = x.shape
        half = hd // 2
        i = torch.arange(half, dtype=torch.float64)
        theta = torch.arange(T, dtype=torch.float64)[:, None] * self.c["rope_base"] ** (-2.0 * i / hd)
        cos, sin = torch.cos(theta)[None, :, None, :], torch.sin(theta)[None, :, None, :]
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def attention(self, layer, q, k, v):  # [B, T, C] each
        c = self.c
        B, T, C = q.shape
        H = c["n_head"]
        hd = C // H
        q, k, v = (t.reshape(B, T, H, hd) for t in (q, k, v))
        if c["position"] == "rope":
            q, k = self.rope(q), self.rope(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, hd]
        a = q @ k.transpose(-1, -2) / math.sqrt(hd)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
        if self.record:
            self.telemetry[f"h.{layer}.attn.max_logit"] = a.detach().masked_fill(~mask, -math.inf).max().item()
        z = a / c["attn_temperature"]
        if c["attn_soft_cap"] > 0:
            z = c["attn_soft_cap"] * torch.tanh(z / c["attn_soft_cap"])
        z = z.masked_fill(~mask, -math.inf)
        p = torch.softmax(z, dim=-1)
        if self.record:
            plogp = torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))
            self.telemetry[f"h.{layer}.attn.entropy"] = (-plogp.detach().sum(-1)).mean().item()
        if c["softmax_clip"]:
            zeta, gamma = c["clip_zeta"], c["clip_gamma"]
            p = torch.clamp((zeta - gamma) * p + gamma, 0.0, 1.0)
        o = p @ v  # [B, H, T, hd]
        return o.transpose(1, 2).reshape(B, T, C)

    def act(self, x):
        if self.c["activation"] == "gelu":
            return torch.nn.functional.gelu(x, approximate="tanh")
        return torch.relu(x)

    # -- the model ------------------------------------------------------------------------
    def forward(self, ids, targets):
        c = self.c
        C = c["n_embd"]
        hd = C // c["n_head"]
        qkv_width = hd if c["per_head_norm"] else C
        B, T = ids.shape
        x = self.p["wte.weight"][ids]
        if c["position"] == "learned":
            x = x + self.p["wpe.weight"][:T][None]
        for l in range(c["n_layer"]):
            h = f"h.{l}."
            a1 = self.norm(h + "n1", x, C) if c["n1"] else x
            qkv = self.linear(h + "qkv", a1)
            q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
            if c["qk_norm"]:
                q, k = self.norm(h + "q_norm", q, qkv_width), self.norm(h + "k_norm", k, qkv_width)
            if c["v_norm"]:
                v = self.norm(h + "v_norm", v, qkv_width)
            att = self.attention(l, q, k, v)
            branch = self.linear(h + "proj", att)
            if c["proj_norm"]:
                branch = self.norm(h + "proj_norm", branch, C)
            if c["layer_scale"]:
                branch = branch * self.p[h + "proj_scale"]
            x = x + branch
            a2 = self.norm(h + "n2", x, C) if c["n2"] else x
            branch = self.linear(h + "fc2", self.act(self.linear(h + "fc1", a2)))
            if c["fc2_norm"]:
                branch = self.norm(h + "fc2_norm", branch, C)
            if c["layer_scale"]:
                branch = branch * self.p[h + "fc2_scale"]
            x = x + branch
        xf = self.norm("nf", x, C)
        head = self.p["wte.weight"] if c["tie_embeddings"] else self.p["lm_head.weight"]
        logits = xf @ head.T
        z = logits
        if c["logit_soft_cap"] > 0:
            z = c["logit_soft_cap"] * torch.tanh(logits / c["logit_soft_cap"])
        lse = torch.logsumexp(z, dim=-1)
        ce = (lse - z.gather(-1, targets[..., None])[..., 0]).mean()
        loss = ce + c["z_loss"] * (lse**2).mean()
        if self.record:
            self.telemetry["loss"] = loss.item()
            self.telemetry["ce_loss"] = ce.item()
            self.telemetry["logits.max"] = logits.detach().max().item()
            self.telemetry["logits.mean_log_z"] = lse.detach().mean().item()
        return loss, logits

    def run(self, ids, targets):
        ids = torch.tensor(ids, dtype=torch.long)
        targets = torch.tensor(targets, dtype=torch.long)
        loss, logits = self.forward(ids, targets)
        loss.backward()
        grads = {k: v.grad.numpy() for k, v in self.p.items()}
        return {"loss": loss.item(), "logits": logits.detach().numpy(), "grads": grads, "telemetry": self.telemetry}
