"""The Streamlit app (`streamlit run app`): entry app/streamlit_app.py, pages in app/views/,
pure Plotly figure builders in app/figures.py."""
