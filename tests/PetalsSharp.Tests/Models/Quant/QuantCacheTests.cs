using PetalsSharp.Models;
using PetalsSharp.Models.Quant;
using Xunit;

namespace PetalsSharp.Tests.Models.Quant;

/// <summary>Packed matrices are kept on disk by content hash, reused on the next load, and a bad file is replaced.</summary>
public class QuantCacheTests
{
    [Fact]
    public void A_second_load_reads_the_packed_file_and_a_corrupt_one_is_rewritten()
    {
        var dir = TestData.Path("llama-gqa");
        using var ckpt = Checkpoint.Open(dir);
        var spec = ckpt.Config.Family.BlockTensors(ckpt.Config, 1).First(s => s.Name.EndsWith("mlp.down_proj.weight", StringComparison.Ordinal));
        var path = Path.Combine(QuantCache.Directory, $"{ckpt.Weights.ContentHash(spec.Name)}-nf4.q");
        File.Delete(path);

        byte[] Packed()
        {
            using var t = QuantCache.Load(ckpt.Weights, spec, QuantFormat.Nf4);
            return t.data<byte>().ToArray();
        }

        var first = Packed();
        Assert.True(File.Exists(path), "the packed matrix was not stored");
        // What a load must hold: the f32 matrix packed row by row.
        using (var f32 = ckpt.Weights.Load(spec.Name))
        {
            var expected = new byte[spec.Shape[0] * QuantFormat.Nf4.RowBytes(spec.Shape[1])];
            BlockQuant.Quantize(QuantFormat.Nf4, f32.data<float>().ToArray(), (int)spec.Shape[0], (int)spec.Shape[1], expected);
            Assert.Equal(expected, first);
        }

        var written = File.GetLastWriteTimeUtc(path);
        Assert.Equal(first, Packed());
        Assert.Equal(written, File.GetLastWriteTimeUtc(path));   // read, not rewritten

        var bytes = File.ReadAllBytes(path);
        bytes[0] ^= 0xFF;                                          // a bad magic: not our file
        File.WriteAllBytes(path, bytes);
        Assert.Equal(first, Packed());
        Assert.Equal(first.Length + 24, new FileInfo(path).Length);
        Assert.NotEqual(bytes[0], File.ReadAllBytes(path)[0]);
    }
}
