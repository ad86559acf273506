namespace PetalsSharp.Text;
public interface ITextTokenizer { int VocabSize {get;} int? BosId {get;} int? EosId {get;} bool AddBos {get;} IReadOnlyList<int> Encode(string text, bool? addBos = null); string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true); string? TokenToString(int id); }
public static class TokenizerLoader { public static ITextTokenizer? TryLoad(string dir) => null; }
public static class Gpt2TokenizerFiles { public static void Write(string dir, int vocab) {} }
