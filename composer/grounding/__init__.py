"""Grounding: where in the image each LoRA of a composition should act.

The registry knows why each LoRA was chosen: the phrase of the prompt that retrieval credited to
it (or the clause around its ``<lora:>`` tag, or a phrase the user gave), its trigger words, and
its Civitai category. From these, a soft mask per LoRA:

* ``phrases``: which clause of the prompt asked for each LoRA, and the prompt without it;
* ``roles``: object, background, style, attribute or concept, from the LoRA's category;
* ``tokens``: a phrase's token positions in the text encoder's sequence (CLIP tokenizer rules);
* ``masks``: pure tensor functions (saliency from a contrast or from attention, routing by role,
  resizing to a layer's resolution);
* ``sources``: the mask sources behind one interface (contrast of the base model with and without
  the clause, the LoRA's own contrast, cross-attention to the phrase's tokens, fixed masks).
"""
