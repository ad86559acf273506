using PetalsSharp.Models;
using static TorchSharp.torch;

namespace PetalsSharp.Cli.Commands;

/// <summary>Opens the model a command names, with a clear message when the folder is not a model.</summary>
public static class ModelOpener
{
    public static CausalLM Open(string modelDir, ScalarType dtype)
    {
        if (!Directory.Exists(modelDir)) throw new CliException($"model folder not found: {modelDir}");
        return CausalLM.Load(modelDir, new ModelLoadOptions(dtype));
    }
}
