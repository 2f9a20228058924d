"""The model: Chinese-Mixtral-Instruct as a LangChain LLM, its prompt template, its exact tokenizer, and the
generation backends (llama.cpp, an OpenAI-compatible server, transformers), each with its own tokenizer."""
