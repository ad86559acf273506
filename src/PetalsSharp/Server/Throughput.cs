using System.Diagnostics;
using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Server;

/// <summary>What a server measured about itself and announces (Petals' inference/forward/network rps).</summary>
/// <param name="InferenceRps">Single-token steps per second through one block.</param>
/// <param name="ForwardRps">Forward tokens per second through one block.</param>
/// <param name="NetworkRps">Activations per second the network carries (an assumed 100 Mbit/s, as Petals without speedtest).</param>
/// <param name="Throughput">What the server offers: min(forward_rps / ((n+1)/2), network_rps), Petals' formula.</param>
public sealed record ThroughputInfo(double InferenceRps, double ForwardRps, double NetworkRps, double Throughput)
{
    /// <summary>Measures on the server's own blocks: a 64-token forward and a few single-token steps.</summary>
    public static ThroughputInfo Measure(LocalBlockStack stack)
    {
        int hidden = stack.Config.HiddenSize, blocks = stack.End - stack.Start;
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var x = randn(1, 64, hidden);
        stack.Forward(x);   // warm-up
        var sw = Stopwatch.StartNew();
        stack.Forward(x);
        double forwardRps = 64 * blocks / Math.Max(sw.Elapsed.TotalSeconds, 1e-6);
        using var session = (LocalBlockSession)stack.OpenSession(new SessionOptions(1, 16));
        var one = randn(1, 1, hidden);
        session.Step(one);
        sw.Restart();
        const int steps = 8;
        for (int i = 0; i < steps; i++) session.Step(one);
        double inferenceRps = steps * blocks / Math.Max(sw.Elapsed.TotalSeconds, 1e-6);
        double networkRps = 100e6 / (hidden * 16.0);
        double throughput = Math.Min(forwardRps / ((blocks + 1) / 2.0), networkRps);
        return new ThroughputInfo(inferenceRps, forwardRps, networkRps, throughput);
    }
}
