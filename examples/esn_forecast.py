"""Journey 5: an echo state network learns Mackey-Glass one step ahead, then forecasts 84 steps
in closed loop (each prediction fed back as the next input).

Run: ``python examples/esn_forecast.py`` (a few seconds on 2 cores).
"""

import torch

from carousel.esn import EchoStateNetwork, nrmse
from carousel.tasks.timeseries import mackey_glass


def main(units: int = 1000, steps: int = 84) -> float:
    series = mackey_glass(2100).reshape(-1, 1)  # (T, 1), tau = 17, one sample per time unit
    train_inputs, train_targets = series[:1999], series[1:2000]  # one step ahead
    esn = EchoStateNetwork(units=units, spectral_radius=1.25, leak_rate=0.3, ridge=1e-5)
    esn.fit(train_inputs, train_targets, washout=100)
    forecast = esn.generate(steps=steps)  # (steps, 1): closed loop from the training's end
    truth = series[2000 : 2000 + steps]
    error = float(nrmse(forecast, truth))
    print(f"{steps}-step closed-loop forecast, {units} units: NRMSE {error:.2e}")
    return error


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
