using System.Runtime.InteropServices;
using Xunit;

namespace PetalsSharp.Tests.Runtime;

/// <summary>
/// Freed native memory goes back to the kernel when the heap is trimmed (what a server does when its compute queue
/// empties). 64 KB blocks, below malloc's mmap threshold as libtorch's small tensors are, are freed every other one
/// so that malloc cannot return them by shrinking the heap's top; only a trim releases their pages. Residency is read
/// per page with mincore, so other tests' allocations cannot blur it as they would a process RSS.
/// </summary>
public sealed unsafe partial class NativeHeapTests
{
    [LibraryImport("libc", EntryPoint = "mincore", SetLastError = true)]
    private static partial int MinCore(nint address, nuint length, byte* vector);

    /// <summary>How many of the given blocks still have their middle page resident.</summary>
    static int ResidentMiddles(IEnumerable<nint> blocks, int size)
    {
        int resident = 0;
        foreach (var block in blocks)
        {
            nint page = (block + size / 2) & ~(nint)(Environment.SystemPageSize - 1);
            byte state;
            Assert.Equal(0, MinCore(page, (nuint)Environment.SystemPageSize, &state));
            resident += state & 1;
        }
        return resident;
    }

    [Fact]
    public void A_trim_returns_freed_heap_pages()
    {
        Assert.True(OperatingSystem.IsLinux());
        int before = 0, after = 0, freedCount = 0;
        // One thread does it all, so every block comes from (and returns to) the same arena.
        var thread = new Thread(() =>
        {
            const int count = 512, size = 64 << 10;
            var blocks = new nint[count];
            for (int i = 0; i < count; i++)
            {
                blocks[i] = Marshal.AllocHGlobal(size);
                new Span<byte>((void*)blocks[i], size).Fill(1);   // touch every page
            }
            var freed = blocks.Where((_, i) => i % 2 == 0).ToArray();
            foreach (var b in freed) Marshal.FreeHGlobal(b);
            freedCount = freed.Length;
            before = ResidentMiddles(freed, size);
            Assert.True(NativeHeap.Trim());
            after = ResidentMiddles(freed, size);
            foreach (var b in blocks.Where((_, i) => i % 2 == 1)) Marshal.FreeHGlobal(b);
        });
        thread.Start();
        thread.Join();
        Assert.True(before > freedCount * 9 / 10, $"{before} of {freedCount} freed blocks were resident before the trim");
        Assert.True(after < freedCount / 10, $"{after} of {freedCount} freed blocks were still resident after the trim");
    }
}
