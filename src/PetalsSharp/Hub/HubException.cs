namespace PetalsSharp.Hub;

/// <summary>A model could not be resolved from the hub or its cache; the message says which file and why.</summary>
public sealed class HubException : Exception
{
    public HubException(string message) : base(message) { }

    public HubException(string message, Exception inner) : base(message, inner) { }
}
