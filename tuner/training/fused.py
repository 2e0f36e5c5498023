"""Fused trial packs, the mechanism: K GAN trials of one shape trained as one model.

This is HFTA's construction (Wang et al., MLSys 2021, UofT-EcoSystem/hfta), written for gentune's
nets: a layer of K member models becomes one layer, and every member keeps its own numbers.

- a Conv2d / ConvTranspose2d of K members is one grouped convolution (groups=K);
- a Linear of K members is one batched matmul (`baddbmm`);
- a BatchNorm of K members is one BatchNorm over K*C channels, so each member keeps its own batch
  statistics, running statistics and affine parameters;
- spectral normalisation runs its power iteration on the K weight matrices at once (`bmm`), each
  member with its own u and v;
- `FusedAdam` / `FusedRMSprop` update all members in one pass, with every member's learning rate,
  betas and step count as tensors of K values.

Activations flow in the layout (B, K, ...): member k's batch is x[:, k]. A convolution's input
(B, K, C, H, W) is then a free view (B, K*C, H, W), and so is BatchNorm's; only the linear layers
move the member axis to the front.

Fused layers are built from K solo modules (`fuse`), which fixes each member's initial weights to
what a solo trial of the same seed starts from, and `FusedNet.store()` / `FusedOptimizer.store()`
write every member's state back into its solo module and optimiser. The solo `Trial` therefore
stays the one format for checkpoints, evaluations and sample grids (tuner/training/pack.py).

Why grouped layers rather than `torch.func.vmap` over stacked module state: docs/packs.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from models.gan import Discriminator, MLPDiscriminator

ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Identity)


class Fused(nn.Module):
    """A layer of K members. `links` pairs each fused tensor with the K solo tensors it stands for."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, list[Tensor]]] = []

    def adopt(self, name: str, solo: list[Tensor], parameter: bool) -> None:
        """Stack the members' tensors into one (K, ...) parameter or buffer called `name`."""
        stacked = torch.stack([t.detach() for t in solo]).clone()
        if parameter:
            self.register_parameter(name, nn.Parameter(stacked))
        else:
            self.register_buffer(name, stacked)
        self.links.append((name, solo))

    @torch.no_grad()
    def store(self) -> None:
        """Copy every member's slice back into its solo tensor."""
        for name, solo in self.links:
            fused = getattr(self, name)
            for k, tensor in enumerate(solo):
                tensor.copy_(fused[k])


class FusedWeight(Fused):
    """The weight (and bias) of K conv/linear layers, with spectral normalisation where they have it."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        first = layers[0]
        self.spectral = parametrize.is_parametrized(first, "weight")
        if self.spectral:
            sn = [m.parametrizations.weight[0] for m in layers]
            self.adopt("weight_orig", [m.parametrizations.weight.original for m in layers], parameter=True)
            self.adopt("u", [p._u for p in sn], parameter=False)
            self.adopt("v", [p._v for p in sn], parameter=False)
            self.sn_dim, self.sn_eps, self.sn_iterations = sn[0].dim, sn[0].eps, sn[0].n_power_iterations
        else:
            self.adopt("weight_orig", [m.weight for m in layers], parameter=True)
        self.has_bias = first.bias is not None
        if self.has_bias:
            self.adopt("bias", [m.bias for m in layers], parameter=True)

    def weight(self) -> Tensor:
        """(K, ...) weights; spectrally normalised ones divided by each member's sigma, with one power
        iteration per forward pass in training mode, in fp32 even under autocast (as in the solo nets)."""
        if not self.spectral:
            return self.weight_orig
        with torch.autocast(self.weight_orig.device.type, enabled=False):
            w = self.weight_orig.float()
            if self.sn_dim != 0:
                w = w.movedim(self.sn_dim + 1, 1)
            mat = w.flatten(2)  # (K, out, in*kh*kw)
            if self.training:
                with torch.no_grad():
                    for _ in range(self.sn_iterations):
                        self.u.copy_(F.normalize(torch.bmm(mat, self.v.unsqueeze(2)).squeeze(2), dim=1, eps=self.sn_eps))
                        self.v.copy_(F.normalize(torch.bmm(mat.transpose(1, 2), self.u.unsqueeze(2)).squeeze(2), dim=1, eps=self.sn_eps))
            u, v = self.u.clone(), self.v.clone()
            sigma = (u * torch.bmm(mat, v.unsqueeze(2)).squeeze(2)).sum(1)
            return self.weight_orig.float() / sigma.view(-1, *([1] * (self.weight_orig.dim() - 1)))


class FusedLinear(FusedWeight):
    """(B, K, in) -> (B, K, out)."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight()  # (K, out, in)
        xk = x.transpose(0, 1)  # (K, B, in)
        if self.has_bias:
            y = torch.baddbmm(self.bias.unsqueeze(1), xk, w.transpose(1, 2))
        else:
            y = torch.bmm(xk, w.transpose(1, 2))
        return y.transpose(0, 1)


class FusedConv(FusedWeight):
    """(B, K, C, H, W) -> (B, K, C', H', W') as one grouped (transposed) convolution."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__(layers)
        first = layers[0]
        self.transposed = isinstance(first, nn.ConvTranspose2d)
        self.stride, self.padding, self.dilation = first.stride, first.padding, first.dilation
        self.output_padding = getattr(first, "output_padding", 0)
        self.members = len(layers)

    def forward(self, x: Tensor) -> Tensor:
        k = self.members
        b, _, c, h, w_ = x.shape
        w = self.weight()
        flat_w = w.reshape(k * w.shape[1], *w.shape[2:])
        bias = self.bias.reshape(-1) if self.has_bias else None
        x = x.reshape(b, k * c, h, w_)
        if self.transposed:
            y = F.conv_transpose2d(x, flat_w, bias, self.stride, self.padding, self.output_padding, k, self.dilation)
        else:
            y = F.conv2d(x, flat_w, bias, self.stride, self.padding, self.dilation, k)
        return y.view(b, k, -1, *y.shape[2:])


class FusedBatchNorm(Fused):
    """BatchNorm1d/2d of K members: one batch norm over K*C channels."""

    def __init__(self, layers: Sequence[nn.BatchNorm1d | nn.BatchNorm2d]) -> None:
        super().__init__()
        first = layers[0]
        self.momentum, self.eps = first.momentum, first.eps
        self.adopt("weight", [m.weight for m in layers], parameter=True)
        self.adopt("bias", [m.bias for m in layers], parameter=True)
        self.adopt("running_mean", [m.running_mean for m in layers], parameter=False)
        self.adopt("running_var", [m.running_var for m in layers], parameter=False)
        self.adopt("num_batches_tracked", [m.num_batches_tracked for m in layers], parameter=False)

    def forward(self, x: Tensor) -> Tensor:
        b, k = x.shape[:2]
        if self.training:
            self.num_batches_tracked.add_(1)
        y = F.batch_norm(x.reshape(b, -1, *x.shape[3:]), self.running_mean.view(-1), self.running_var.view(-1),
                         self.weight.reshape(-1), self.bias.reshape(-1), self.training, self.momentum, self.eps)
        return y.view(x.shape)


def fuse_layer(layers: Sequence[nn.Module]) -> nn.Module:
    first = layers[0]
    if isinstance(first, (nn.Conv2d, nn.ConvTranspose2d)):
        return FusedConv(layers)
    if isinstance(first, nn.Linear):
        return FusedLinear(layers)
    if isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return FusedBatchNorm(layers)
    if isinstance(first, nn.Flatten):
        return nn.Flatten(first.start_dim + 1, first.end_dim)
    if isinstance(first, nn.Unflatten):
        return nn.Unflatten(first.dim + 1, first.unflattened_size)
    if isinstance(first, ELEMENTWISE):
        return first
    raise TypeError(f"no fused form of {type(first).__name__}")


class FusedNet(nn.Module):
    """K solo nets of one class and shape (each an `nn.Sequential` called `net`) as one.

    Inputs and outputs carry the member axis second: (B, K, ...); a discriminator's scores are (B, K)."""

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        kinds = {(type(n), tuple(p.shape for p in n.parameters())) for n in nets}
        if len(kinds) != 1:
            raise ValueError("a pack fuses nets of one class and shape only")
        self.net = nn.Sequential(*(fuse_layer(group) for group in zip(*(n.net for n in nets))))
        self.scores = isinstance(nets[0], (Discriminator, MLPDiscriminator))  # (B, K, 1) -> (B, K)
        self.members = len(nets)

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(x)
        return y.squeeze(2) if self.scores else y

    def fused_layers(self) -> list[Fused]:
        return [m for m in self.modules() if isinstance(m, Fused)]

    def store(self) -> None:
        for layer in self.fused_layers():
            layer.store()

    def links(self) -> list[tuple[Tensor, list[Tensor]]]:
        """(fused parameter, the K solo parameters) for every parameter, in a fixed order."""
        return [(getattr(layer, name), solo) for layer in self.fused_layers() for name, solo in layer.links
                if isinstance(getattr(layer, name), nn.Parameter)]


class FusedOptimizer:
    """The K solo optimisers of one net, applied to its fused parameters in one pass.

    State lives in (K, ...) tensors here during training and goes back into the solo optimisers'
    `state` (and their `step` counts) with `store()`, so a member's checkpoint is a solo checkpoint.
    Every per-member number (learning rate, betas, step count) is a (K,) tensor on the parameters'
    device, so a step copies nothing from the host and never waits for the device."""

    state_keys: tuple[str, ...] = ()

    def __init__(self, net: FusedNet, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        self.links = net.links()
        self.optimizers = list(optimizers)
        if any(len(opt.param_groups) != 1 for opt in optimizers):
            raise ValueError("a pack fuses optimisers with one parameter group")
        self.groups = [opt.param_groups[0] for opt in optimizers]
        self.device = self.links[0][0].device
        self.state: list[dict[str, Tensor]] = []
        for fused, solo in self.links:
            entry = {}
            for key in self.state_keys:
                entry[key] = torch.stack([
                    opt.state[p][key].detach() if key in opt.state.get(p, {}) else torch.zeros_like(p)
                    for opt, p in zip(self.optimizers, solo)]).clone()
            self.state.append(entry)
        _, first = self.links[0]  # one optimiser step count per member: its first parameter's
        self.steps = self.member_tensor([float(opt.state[p]["step"]) if "step" in opt.state.get(p, {}) else 0.0
                                         for opt, p in zip(self.optimizers, first)])

    def member_tensor(self, values: Sequence[float], dtype: torch.dtype = torch.float64) -> Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)

    def zero_grad(self) -> None:
        for fused, _ in self.links:
            fused.grad = None

    def coefficients(self) -> dict[str, Tensor]:
        """This step's per-member numbers, (K,) float32 tensors on the device."""
        raise NotImplementedError

    def update(self, param: Tensor, grad: Tensor, state: dict[str, Tensor], c: dict[str, Tensor]) -> None:
        """One parameter's update; `c`: the coefficients shaped to broadcast over it."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        coefficients = self.coefficients()
        for (param, _), state in zip(self.links, self.state):
            if param.grad is not None:
                shape = (-1,) + (1,) * (param.dim() - 1)
                self.update(param, param.grad, state, {k: v.view(shape) for k, v in coefficients.items()})

    @torch.no_grad()
    def store(self) -> None:
        steps = self.steps.tolist()
        for (fused, solo), entry in zip(self.links, self.state):
            for k, (opt, p) in enumerate(zip(self.optimizers, solo)):
                state = opt.state[p]
                for key, value in entry.items():
                    state[key] = value[k].clone()
                state["step"] = torch.tensor(steps[k])


class FusedAdam(FusedOptimizer):
    """torch.optim.Adam's update (no weight decay, no amsgrad) with per-member lr, betas and step."""

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, net: FusedNet, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        super().__init__(net, optimizers)
        if any(g["weight_decay"] or g["amsgrad"] or g["maximize"] for g in self.groups):
            raise ValueError("a pack fuses plain Adam only (no weight decay, amsgrad or maximize)")
        self.beta1 = self.member_tensor([g["betas"][0] for g in self.groups])
        self.beta2 = self.member_tensor([g["betas"][1] for g in self.groups])
        self.lr = self.member_tensor([g["lr"] for g in self.groups])
        self.eps = self.member_tensor([g["eps"] for g in self.groups], torch.float32)

    def coefficients(self) -> dict[str, Tensor]:
        # torch's Adam computes the bias corrections in float64 (Python floats): so do we
        return {"one_minus_beta1": (1 - self.beta1).float(), "beta2": self.beta2.float(),
                "one_minus_beta2": (1 - self.beta2).float(), "eps": self.eps,
                "step_size": (self.lr / (1 - self.beta1 ** self.steps)).float(),
                "inv_bc2_sqrt": 1 / (1 - self.beta2 ** self.steps).sqrt().float()}

    def update(self, param: Tensor, grad: Tensor, state: dict[str, Tensor], c: dict[str, Tensor]) -> None:
        state["exp_avg"].lerp_(grad, c["one_minus_beta1"])
        state["exp_avg_sq"].mul_(c["beta2"]).add_(c["one_minus_beta2"] * grad * grad)
        denom = (state["exp_avg_sq"].sqrt() * c["inv_bc2_sqrt"]).add_(c["eps"])
        param.sub_(c["step_size"] * state["exp_avg"] / denom)


class FusedRMSprop(FusedOptimizer):
    """torch.optim.RMSprop's update (no momentum, not centred) with per-member lr and alpha."""

    state_keys = ("square_avg",)

    def __init__(self, net: FusedNet, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        super().__init__(net, optimizers)
        if any(g["weight_decay"] or g["momentum"] or g["centered"] or g["maximize"] for g in self.groups):
            raise ValueError("a pack fuses plain RMSprop only (no weight decay, momentum or centring)")
        self.alpha = self.member_tensor([g["alpha"] for g in self.groups])
        self.lr = self.member_tensor([g["lr"] for g in self.groups], torch.float32)
        self.eps = self.member_tensor([g["eps"] for g in self.groups], torch.float32)

    def coefficients(self) -> dict[str, Tensor]:
        return {"alpha": self.alpha.float(), "one_minus_alpha": (1 - self.alpha).float(), "lr": self.lr, "eps": self.eps}

    def update(self, param: Tensor, grad: Tensor, state: dict[str, Tensor], c: dict[str, Tensor]) -> None:
        state["square_avg"].mul_(c["alpha"]).add_(c["one_minus_alpha"] * grad * grad)
        param.sub_(c["lr"] * grad / state["square_avg"].sqrt().add_(c["eps"]))


FUSED_OPTIMIZERS = {torch.optim.Adam: FusedAdam, torch.optim.RMSprop: FusedRMSprop}


def fuse_optimizer(net: FusedNet, optimizers: Sequence[torch.optim.Optimizer]) -> FusedOptimizer:
    kinds = {type(o) for o in optimizers}
    if len(kinds) != 1 or (kind := kinds.pop()) not in FUSED_OPTIMIZERS:
        raise ValueError(f"a pack fuses one optimiser kind of {', '.join(k.__name__ for k in FUSED_OPTIMIZERS)}")
    return FUSED_OPTIMIZERS[kind](net, optimizers)
