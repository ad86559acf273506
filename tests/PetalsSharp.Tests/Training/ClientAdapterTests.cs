using PetalsSharp.Client;
using PetalsSharp.Models;
using PetalsSharp.Training;
using TorchSharp.Modules;
using Xunit;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace PetalsSharp.Tests.Training;

/// <summary>
/// Every client-side trainable kind (a module between remote spans, LoRA, the LM head, a classification head)
/// gets the gradients local autograd gives when the blocks run on two server processes.
/// </summary>
[Trait("Category", "Processes")]
[Collection(TrainingSwarmCollection.Name)]
public sealed class ClientAdapterTests(TrainingSwarm swarm)
{
    static readonly Reference Ref = Reference.Load("llama-gqa");

    /// <summary>Runs <paramref name="grads"/> on the local model and on the swarm; asserts every gradient within 1e-5.</summary>
    async Task AssertSameGradients(Func<CausalLM, IReadOnlyList<Tensor>> grads)
    {
        using var local = CausalLM.Load(TrainingSwarm.ModelDir);
        using var remote = await swarm.ConnectAsync();
        var expected = grads(local);
        var actual = grads(remote);
        Assert.Equal(expected.Count, actual.Count);
        for (int i = 0; i < expected.Count; i++)
        {
            var diff = TensorAssert.MaxAbsDiff(expected[i], actual[i]);
            Assert.True(diff <= 1e-5, $"gradient {i}: max diff {diff:E2}");
            Assert.True(actual[i].abs().max().item<float>() > 0, $"gradient {i} is zero: the test would prove nothing");
        }
    }

    static void Backward(CausalLM lm, Tensor loss)
    {
        if (lm.Blocks is RemoteSequential r) r.Backward(loss);
        else loss.backward();
    }

    /// <summary>B drawn from its own generator: both sides of a comparison get the same one, whatever runs in parallel.</summary>
    static void RandomB(Tensor b, long seed)
    {
        using var generator = new Generator((ulong)seed + 100);
        b.copy_(randn(b.shape, generator: generator) * 0.1);
    }

    static LoraLinear RandomLora(Tensor weight, long seed)
    {
        var lora = new LoraLinear(weight, null, rank: 4, alpha: 8, seed: seed);
        using (var _ = no_grad()) RandomB(lora.B, seed);    // B = 0 would give A no gradient
        return lora;
    }

    [Fact]
    public Task A_LoRA_module_between_two_remote_spans() => AssertSameGradients(lm =>
    {
        using var generator = new Generator(21);
        var middleWeight = eye(64) + randn([64, 64], generator: generator) * 0.05;   // [H, H] frozen
        var lora = RandomLora(middleWeight, 1);
        IBlockStack first, second;
        if (lm.Blocks is RemoteSequential r) (first, second) = (r[0..2], r[2..3]);
        else (first, second) = (((LocalBlockStack)lm.Blocks).Slice(0, 2), ((LocalBlockStack)lm.Blocks).Slice(2, 3));
        var ids = Ref.Longs("input_ids");
        var h = first.Forward(lm.Ends.Embed(ids));                          // [B, T, H]
        h = second.Forward(lora.forward(h));                                // [B, T, H]
        var loss = TunedModel.CausalLoss(lm.Ends.Logits(lm.Ends.FinalNorm(h)), ids);
        Backward(lm, loss);
        return [lora.A.grad!.clone(), lora.B.grad!.clone()];
    });

    [Fact]
    public Task LoRA_on_the_LM_head() => AssertSameGradients(lm =>
    {
        using var tuned = new TunedModel(lm, new TuningOptions(TuningMode.Adapter, LoraRank: 4, LoraAlpha: 8, Seed: 2));
        using (var _ = no_grad()) RandomB(tuned.HeadLora!.B, 2);
        Assert.Equal([4L, 64L], tuned.HeadLora.A.shape);                    // PEFT: A [r, in], B [out, r]
        Assert.Equal([320L, 4L], tuned.HeadLora.B.shape);
        Assert.Equal(["lm_head.lora_A.weight", "lm_head.lora_B.weight"], tuned.Trainable.Select(p => p.Name).Order());
        var loss = tuned.Loss(Ref.Longs("input_ids"));
        tuned.Backward(loss);
        return [tuned.HeadLora.A.grad!.clone(), tuned.HeadLora.B.grad!.clone()];
    });

    [Fact]
    public Task A_trainable_LM_head() => AssertSameGradients(lm =>
    {
        using var tuned = new TunedModel(lm, new TuningOptions(TuningMode.Head));
        var loss = tuned.Loss(Ref.Longs("input_ids"));
        tuned.Backward(loss);
        return [tuned.Trainable.Single().Parameter.grad!.clone()];
    });

    [Theory]
    [InlineData(Pooling.LastToken)]
    [InlineData(Pooling.Mean)]
    public Task Sequence_classification_over_pooled_hidden_states(Pooling pooling) => AssertSameGradients(lm =>
    {
        using var classifier = new SequenceClassifier(lm, numLabels: 3, pooling, seed: 5);
        var logits = classifier.Forward(Ref.Longs("input_ids"), lengths: [7, 5]);   // row 1 right-padded by 2
        var loss = nn.functional.cross_entropy(logits, tensor(new long[] { 2, 0 }));
        Backward(lm, loss);
        return [classifier.Weight.grad!.clone()];
    });
}
