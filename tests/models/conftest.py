import torch

# Model tests run many tiny ops: one intra-op thread avoids oversubscribing the two cores (measured: the LSTM
# test took 100+ s with two threads on a busy machine).
torch.set_num_threads(1)
