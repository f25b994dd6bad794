"""Peak dense tensor throughput of datacenter GPU models, by the name NVML reports.

What ``total_tflops`` in a pool's subscribed_teams is made of (docs/api.md): a slot's share is
its GPU's peak ÷ the pool's sharing ratio. Each figure is the vendor's datasheet value for dense
BF16 tensor operations (FP16 tensor where the GPU has no BF16), without structured sparsity (the
datasheets' headline figures with sparsity are twice these). A model not listed here has no
figure: its teams' ``total_tflops`` is null rather than a guess.
"""
from __future__ import annotations

# NVML's product names (nvmlDeviceGetName) -> dense BF16/FP16 tensor TFLOPS, and the datasheet.
PEAK_DENSE_TFLOPS = {
    # NVIDIA H100 Tensor Core GPU datasheet: SXM 1,979 / PCIe 1,513 / NVL 1,671 BF16 TFLOPS with sparsity.
    "NVIDIA H100 80GB HBM3": 989.5,
    "NVIDIA H100 SXM5 80GB": 989.5,
    "NVIDIA H100 PCIe": 756.5,
    "NVIDIA H100 NVL": 835.5,
    # NVIDIA H200 Tensor Core GPU datasheet: SXM 1,979 / NVL 1,671 BF16 TFLOPS with sparsity.
    "NVIDIA H200": 989.5,
    "NVIDIA H200 NVL": 835.5,
    # NVIDIA GH200 Grace Hopper Superchip datasheet: the H100 SXM figure, 1,979 with sparsity.
    "NVIDIA GH200 480GB": 989.5,
    # NVIDIA HGX B200 datasheet: 36 PFLOPS FP16/BF16 with sparsity for eight GPUs.
    "NVIDIA B200": 2250.0,
    # NVIDIA A100 Tensor Core GPU datasheet: 312 BF16 TFLOPS (624 with sparsity), every form factor.
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    # NVIDIA A30 datasheet: 165 BF16 TFLOPS (330 with sparsity).
    "NVIDIA A30": 165.0,
    # NVIDIA A40 datasheet: 149.7 BF16 TFLOPS (299.4 with sparsity).
    "NVIDIA A40": 149.7,
    # NVIDIA A10 datasheet: 125 BF16 TFLOPS (250 with sparsity).
    "NVIDIA A10": 125.0,
    # NVIDIA L40S datasheet: 362.05 BF16 TFLOPS (733 with sparsity); L40: 181.05 (362.1); L4: 121 (242).
    "NVIDIA L40S": 362.05,
    "NVIDIA L40": 181.05,
    "NVIDIA L4": 121.0,
    # NVIDIA V100 datasheet: 125 (SXM2) and 112 (PCIe) FP16 tensor TFLOPS; no BF16, no sparsity.
    "Tesla V100-SXM2-16GB": 125.0,
    "Tesla V100-SXM2-32GB": 125.0,
    "Tesla V100-PCIE-16GB": 112.0,
    "Tesla V100-PCIE-32GB": 112.0,
    # NVIDIA T4 datasheet: 65 FP16 (mixed precision) tensor TFLOPS.
    "Tesla T4": 65.0,
}


def peak_dense_tflops(model: str | None) -> float | None:
    """The model's figure, or None for a model the table lacks."""
    return PEAK_DENSE_TFLOPS.get(model) if model else None
