namespace PetalsSharp.Relay;

/// <summary>A stream that reports every byte read or written (the relay's traffic counter).</summary>
sealed class CountingStream(Stream inner, Action<int> count) : Stream
{
    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() => inner.Flush();
    public override int Read(byte[] buffer, int offset, int n)
    {
        int read = inner.Read(buffer, offset, n);
        count(read);
        return read;
    }
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default)
    {
        int read = await inner.ReadAsync(buffer, ct).ConfigureAwait(false);
        count(read);
        return read;
    }
    public override void Write(byte[] buffer, int offset, int n)
    {
        inner.Write(buffer, offset, n);
        count(n);
    }
    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct = default)
    {
        await inner.WriteAsync(buffer, ct).ConfigureAwait(false);
        count(buffer.Length);
    }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    protected override void Dispose(bool disposing)
    {
        if (disposing) inner.Dispose();
        base.Dispose(disposing);
    }
}
