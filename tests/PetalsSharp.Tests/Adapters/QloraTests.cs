using PetalsSharp.Models;
using PetalsSharp.Models.Lora;
using PetalsSharp.Models.Quant;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Adapters;

/// <summary>
/// Issue 17: server-side LoRA over quantized blocks (QLoRA style: the adapter stays f32). For every family the cached
/// steps (fused path) equal the cache-free forward (prefill) and the reference path (decode) of the same packed blocks with the adapter, the adapter changes
/// the output, and backward through the packed blocks gives the input gradient of f32 blocks holding the dequantized weights.
/// </summary>
public sealed class QloraTests
{
    [Theory]
    [InlineData("llama-gqa", QuantFormat.Int8)]
    [InlineData("mixtral", QuantFormat.Int8)]
    [InlineData("falcon-new", QuantFormat.Nf4)]
    [InlineData("bloom", QuantFormat.Nf4)]
    public void An_f32_adapter_runs_over_packed_blocks_in_steps_and_backward(string fixture, QuantFormat quant)
    {
        var model = ModelConfigLoader.Load(TestData.Path(fixture));
        var dir = TestAdapter.Write(TestAdapter.NewDir(), seed: 5, fixture: fixture);
        using var adapter = LoraAdapter.Load("q", dir, model);
        using var ckpt = Checkpoint.Open(TestData.Path(fixture));
        using var packed = ckpt.LoadBlocks(0, model.NumLayers, quant: quant);
        using var exact = RoundTripped(ckpt, model, quant);
        using var scope = NewDisposeScope();
        manual_seed(3);
        var x = randn(2, 5, model.HiddenSize);                                          // [B, T, H]
        var options = new ForwardOptions { Adapter = adapter };

        using (no_grad())
        {
            var adapted = packed.Forward(x, options);                                    // [B, T, H]
            Assert.True(TensorAssert.MaxAbsDiff(packed.Forward(x), adapted) > 1e-2, "the adapter must change the output");
            using var session = (LocalBlockSession)packed.OpenSession(new SessionOptions(2, 8) { Adapter = adapter });
            using var reference = (LocalBlockSession)packed.OpenSession(new SessionOptions(2, 8) { Adapter = adapter });
            TensorAssert.Close(adapted.narrow(1, 0, 4), session.Step(x.narrow(1, 0, 4)), 1e-4, 1e-4, $"{fixture}: prefill");
            // A single row's product rounds x to int8 (the cache-free forward's rows do not), so the decode step is
            // held to the reference path's same step; a Mixtral expert may see one row of the two.
            Tensor expected;
            using (PetalsSharp.Models.Kernels.FusedDecode.Disable())
            {
                reference.Step(x.narrow(1, 0, 4));
                expected = reference.Step(x.narrow(1, 4, 1));
            }
            TensorAssert.Close(expected, session.Step(x.narrow(1, 4, 1)), 1e-4, 1e-4, $"{fixture}: decode");
        }

        using var grad = enable_grad();
        var upstream = randn(2, 5, model.HiddenSize);                                   // [B, T, H]
        var xq = x.clone().requires_grad_(true);                                         // [B, T, H]
        (packed.Forward(xq, options) * upstream).sum().backward();
        var xe = x.clone().requires_grad_(true);                                         // [B, T, H]
        (exact.Forward(xe, options) * upstream).sum().backward();
        double relative = TensorAssert.MaxAbsDiff(xe.grad!, xq.grad!) / xe.grad!.abs().max().item<float>();
        Assert.True(relative <= 1e-4, $"{fixture} {quant}: input gradient vs the dequantized weights, max |diff| / max |grad| = {relative:E2}");
    }

    /// <summary>
    /// The same blocks with plain f32 weights equal to the packed ones (each matrix quantized and dequantized the way
    /// a load packs it): what backward through a packed span must differentiate.
    /// </summary>
    static LocalBlockStack RoundTripped(Checkpoint ckpt, ModelConfig model, QuantFormat quant)
    {
        var blocks = new List<DecoderBlock>();
        for (int i = 0; i < model.NumLayers; i++)
        {
            var weights = new Dictionary<string, Tensor>();
            foreach (var spec in model.Family.BlockTensors(model, i))
            {
                var t = ckpt.Weights.Load(spec.Name);                                     // [shape] f32
                if (spec.QuantizedBy(quant))
                {
                    int rows = (int)spec.Shape[0], cols = (int)spec.Shape[1];
                    var values = t.data<float>().ToArray();
                    var bytes = new byte[rows * quant.RowBytes(cols)];
                    BlockQuant.Quantize(quant, values, rows, cols, bytes);
                    BlockQuant.Dequantize(quant, bytes, rows, cols, values);
                    t = tensor(values, [rows, cols]);                                      // [out, in] as packed
                }
                weights[spec.Name] = t;
            }
            blocks.Add(model.Family.CreateBlock(model, i, weights));
        }
        return new LocalBlockStack(model, blocks);
    }
}
