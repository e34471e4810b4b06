"""The benchmark job's parts: the pipeline swept over engine settings, three baselines on the same chunks,
and the figures that compare them (efficiency, MFU, a diagnosis). Only the runners touch Ray, vLLM or HTTP."""
