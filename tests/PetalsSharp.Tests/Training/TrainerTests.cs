using PetalsSharp.Models;
using PetalsSharp.Text.Tokenizers;
using PetalsSharp.Training;
using Xunit;
using static TorchSharp.torch;

namespace PetalsSharp.Tests.Training;

/// <summary>The loop, the data format and the saved file, on the local llama-gqa model (no servers needed).</summary>
public sealed class TrainerTests
{
    static readonly Reference Ref = Reference.Load("llama-gqa");

    static IReadOnlyList<TrainingExample> Pattern() =>
        Enumerable.Range(0, 4).Select(i => new TrainingExample([5, 6, 7, 5, 6, 7, 5, 6, 7, 5, 6, 7], PromptLength: 2)).ToList();

    [Theory]
    [InlineData(TuningMode.PTune)]
    [InlineData(TuningMode.DeepPTune)]
    [InlineData(TuningMode.Adapter)]
    public async Task Training_lowers_the_loss_and_the_saved_file_reloads_to_the_same_model(TuningMode mode)
    {
        var dir = Text.TempDir.Create();
        using var lm = CausalLM.Load(TestData.Path("llama-gqa"));
        using var tuned = new TunedModel(lm, new TuningOptions(mode, PreSeqLen: 4, LoraRank: 4, Seed: 1));
        var steps = new List<TrainingProgress>();
        var result = await Trainer.TrainAsync(tuned, Pattern(), new TrainerOptions(Steps: 30, LearningRate: 5e-2, BatchSize: 2),
            new Progress<TrainingProgress>(steps.Add));
        Assert.True(result.LastLoss < 0.5 * result.FirstLoss, $"{mode}: loss {result.FirstLoss} -> {result.LastLoss}");

        var path = Path.Combine(dir, "tuned.safetensors");
        TunedFile.Save(tuned, path, "llama-gqa");
        var meta = TunedFile.ReadMetadata(path);
        Assert.Equal(TuningModes.Name(mode), meta["petals_tuning_mode"]);
        Assert.Equal(mode.UsesPrompts() ? "4" : "0", meta["pre_seq_len"]);
        Assert.Equal("llama-gqa", meta["model_name"]);
        using var reloaded = TunedFile.Load(lm, path);
        var ids = Ref.Longs("input_ids");
        using var noGrad = no_grad();
        Assert.True(TensorAssert.MaxAbsDiff(tuned.Forward(ids), reloaded.Forward(ids)) == 0);
    }

    [Fact]
    public void A_file_for_another_model_is_refused()
    {
        var dir = Text.TempDir.Create();
        using var lm = CausalLM.Load(TestData.Path("llama-gqa"));
        using var tuned = new TunedModel(lm, new TuningOptions(TuningMode.PTune, PreSeqLen: 2));
        var path = Path.Combine(dir, "p.safetensors");
        TunedFile.Save(tuned, path, "llama-gqa");
        var otherDir = Path.Combine(dir, "other");
        RandomCheckpoint.Write(new LlamaConfig
        {
            ModelType = "llama", VocabSize = 320, HiddenSize = 32, NumLayers = 3, NumHeads = 2, NumKvHeads = 2, HeadDim = 16,
            IntermediateSize = 64, MaxPositionEmbeddings = 64, RmsNormEps = 1e-5,
        }, otherDir, 1, ScalarType.Float32);
        using var other = CausalLM.Load(otherDir);
        var e = Assert.Throws<InvalidDataException>(() => TunedFile.Load(other, path));
        Assert.Contains("llama-gqa", e.Message);
    }

    [Fact]
    public void Collate_scores_only_completion_tokens_and_right_pads()
    {
        var (ids, labels) = Trainer.Collate([new TrainingExample([1, 2, 3], 1), new TrainingExample([4, 5])], padId: 0);
        Assert.Equal(new long[] { 1, 2, 3, 4, 5, 0 }, ids.data<long>().ToArray());
        Assert.Equal(new long[] { -100, 2, 3, 4, 5, -100 }, labels.data<long>().ToArray());
    }

    [Theory]
    [InlineData("{\"text\": 5}", "must be a string")]
    [InlineData("[1, 2]", "JSON object")]
    [InlineData("{\"prompt\": \"a\"}", "expected {\"text\"")]
    [InlineData("not json", ":1:")]
    public void Bad_lines_name_the_file_and_line(string line, string message)
    {
        var dir = Text.TempDir.Create();
        var path = Path.Combine(dir, "d.jsonl");
        File.WriteAllText(path, line + "\n");
        Gpt2TokenizerFiles.Write(dir, 300);
        var tok = TokenizerLoader.TryLoad(dir)!;
        var e = Assert.Throws<InvalidDataException>(() => FinetuneData.LoadJsonl(path, tok));
        Assert.Contains(message, e.Message);
        Assert.Contains("d.jsonl:1", e.Message);
    }
}
