"""Model building blocks: backbone registry, input preprocessing, from-scratch stack, classifier."""
