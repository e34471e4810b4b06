"""The node probe's reading of nvidia-smi: names, memory and the driver's version, without a GPU."""

from __future__ import annotations

import pytest

from pipeline.runtime.devices import MIB, parse_nvidia_smi

pytestmark = pytest.mark.unit


def test_nvidia_smi_lines_give_name_memory_and_driver():
    text = "NVIDIA H100 80GB HBM3, 81559, 580.65.06\nNVIDIA A10G, 23028, 580.65.06\n"
    assert parse_nvidia_smi(text) == [
        ("NVIDIA H100 80GB HBM3", 81559 * MIB, "580.65.06"),
        ("NVIDIA A10G", 23028 * MIB, "580.65.06"),
    ]
    assert parse_nvidia_smi("NVIDIA L4, 23034") == [("NVIDIA L4", 23034 * MIB, None)]  # an older query
    assert parse_nvidia_smi("No devices were found") == []
